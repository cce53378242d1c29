"""DE-RRD knowledge distillation (Kang et al., CIKM 2020): a compact student from a frozen teacher.

- `rrd.rrd_loss`: relaxed ranking distillation (user side; IR-RRD is the same on the item side);
- `experts.DistillationExperts`: distillation experts with Gumbel-softmax selection;
- `rd.rd_loss`: the RD baseline (Tang & Wang 2018);
- `sampling`: teacher lists and the per-epoch interesting / uninteresting sets.
"""
