"""The Pegasus engine: plan a generated run onto HTCondor (plan), tell when it ended (monitor), and turn the
submit directory into job records (records). `PegasusEngine` is the Engine protocol over the three."""
