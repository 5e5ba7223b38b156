"""Dataset builders (packaged real atlases, phantoms) and checks, nnU-Net v2 raw layout."""
