"""Developer tools that never ship in the runtime package: a local standalone cluster, report screenshots."""
