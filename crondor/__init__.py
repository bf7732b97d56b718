"""crondor"""
