"""coopml.fusion layer."""
