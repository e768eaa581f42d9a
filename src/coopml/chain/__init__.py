"""coopml.chain layer."""
