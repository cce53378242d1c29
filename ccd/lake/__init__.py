"""The data lake: raw logs to blocks, validated Parquet partitions and the DuckDB catalog."""
