"""Data preparation: FineWeb-Edu -> raw parquet shards -> ASCII -> Llama-3 tokens -> packed MDS.

``scripts/download_fineweb_edu.py`` and ``scripts/create_mds.py`` drive these modules; both read
the training YAML (``run_config``), and training checks the MDS manifest (``manifest``).
"""
