"""A run: its experiment config, its folder (what it holds, its manifest, its lock), the data it trains on, and its upload to the Hub."""
