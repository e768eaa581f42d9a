"""coopml.roles layer."""
