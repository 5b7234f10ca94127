from .fileio import (
    AtomicLocalBackend,
    AtomicTextFile,
    atomic_write_bytes,
    atomic_write_figure,
    atomic_write_text,
    remove_stale_temp_files,
)

__all__ = ['AtomicLocalBackend', 'AtomicTextFile', 'atomic_write_bytes', 'atomic_write_figure',
           'atomic_write_text', 'remove_stale_temp_files']
