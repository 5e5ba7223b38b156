"""The ways drawn atlas labels can be segmented on a scan (names shared by the engine, CLI and Slicer).

* ``register-deformable`` - carry the labels by affine + deformable registration (propagation.py);
* ``register-affine``     - carry them by affine registration only;
* ``lcs``                 - condition the bundle's LCS network on each label (Ma et al. 2022);
* ``lcs-refine``          - deformable propagation corrected by a refine network (bundles with an
                            ``lcs_refine`` network, networks.RefineLCSNet).

The default is the best measured on the demo's held-out brains: 116 fine AAL labels drawn on the atlas, never
trained (docs/DEMO.md). Kept free of torch so command-line help stays fast.
"""

ATLAS_METHODS = ("register-deformable", "register-affine", "lcs", "lcs-refine")
DEFAULT_ATLAS_METHOD = "register-deformable"
