"""bnnforge.boards."""
