from .fileio import AtomicLocalBackend, atomic_write_bytes, atomic_write_text

__all__ = ['AtomicLocalBackend', 'atomic_write_bytes', 'atomic_write_text']
