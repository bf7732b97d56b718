"""pegasus"""
