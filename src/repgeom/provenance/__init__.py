"""Provenance: a record per artifact (what made it, from what, with which code and config) and an audit of them.

    python -m repgeom.provenance run --meta JSON --inputs ... --outputs ... -- COMMAND...   (the job wrapper)
    repgeom audit RESULTS_DIR [--strict-code] [--config CONFIG] | repgeom audit --trace ARTIFACT
"""
from repgeom.provenance.hashing import dir_sha256, file_sha256, hash_path, stat_signature, zarr_group_hash
from repgeom.provenance.records import (RecordError, config_sha256, config_subset, read_record, record_path,
                                        remove_record, write_record)

__all__ = ["RecordError", "config_sha256", "config_subset", "dir_sha256", "file_sha256", "hash_path", "read_record",
           "record_path", "remove_record", "stat_signature", "write_record", "zarr_group_hash"]
