"""Reading the served tables without Spark or a JVM: the lookups downstream services call."""
