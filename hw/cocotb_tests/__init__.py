"""cocotb test modules run by bnnforge.hw.harness (not collected by pytest)."""
