"""Extract (providers), transform (pure) and load (database) of bars."""
