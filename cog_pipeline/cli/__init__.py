"""The command line: click commands over pipeline, publishing and the engines; operator views."""
