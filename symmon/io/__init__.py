"""Files symmon writes and reads: the H5MD log (writer, reader, recovery) and file hashes."""
