"""memoh-trio."""
