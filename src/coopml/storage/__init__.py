"""coopml.storage layer."""
