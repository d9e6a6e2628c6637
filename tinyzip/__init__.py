"""tinyzip: lossless compression with a small domain transformer and online context mixing."""
