"""`python -m cog_pipeline` is the `cog-pipeline` command (workflow hooks use this form: no PATH needed)."""

from cog_pipeline.cli.main import main

if __name__ == "__main__":
    main()
