"""coopml.he layer."""
