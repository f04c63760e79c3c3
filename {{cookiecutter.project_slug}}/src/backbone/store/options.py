"""RocksDB tuning for a point-lookup-heavy aggregate store."""

from __future__ import annotations

from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options

# One block cache for every store of the process, so memory does not grow with partitions.
_SHARED_CACHE = Cache(64 * 1024 * 1024)


def store_options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_write_buffer_size(16 * 1024 * 1024)
    opts.set_max_write_buffer_number(3)
    opts.set_max_background_jobs(2)
    opts.set_keep_log_file_num(2)
    opts.set_compression_type(DBCompressionType.lz4())
    opts.set_bottommost_compression_type(DBCompressionType.zstd())
    table = BlockBasedOptions()
    table.set_block_cache(_SHARED_CACHE)
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    opts.set_block_based_table_factory(table)
    return opts


def meta_options() -> Options:
    return Options(raw_mode=True)
