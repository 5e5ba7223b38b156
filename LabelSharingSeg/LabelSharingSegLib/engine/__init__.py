"""Engine: label spaces, networks, bundles, preprocessing and inference. Never imports slicer."""
