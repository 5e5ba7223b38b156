"""Scene side: MRML nodes <-> engine arrays. Imports slicer MRML classes, never Qt."""
