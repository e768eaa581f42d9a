"""coopml.sim layer."""
