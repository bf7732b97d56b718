"""cog-pipeline core."""
