"""Small utilities shared by the library."""
