"""The stage jobs, one module each: storage I/O around the pure stages, and the runs manifest."""
