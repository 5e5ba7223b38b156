"""All or nothing for scene writes: on any exception, undo what the block did to the scene.

Nodes added inside the block are removed (newest first, with the display/storage nodes they brought), and
segmentations registered with :meth:`SceneTransaction.protectSegmentation` get their segments back as they
were (IDs, order, names, colours, terminology and voxels), so a failed write leaves the scene exactly as it was.
"""

from __future__ import annotations

import slicer


def _nodeIds(scene) -> list[str]:
    nodes = scene.GetNodes()
    return [nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())]


class SceneTransaction:
    """``with SceneTransaction(scene) as change: change.protectSegmentation(node); ...write...``"""

    def __init__(self, scene):
        self.scene = scene
        self._before: set[str] = set()
        self._protected: list[tuple[object, object]] = []

    def __enter__(self) -> SceneTransaction:
        self._before = set(_nodeIds(self.scene))
        return self

    def protectSegmentation(self, segmentationNode) -> None:
        """Keep a copy of ``segmentationNode``'s segments to restore if the block fails."""
        copy = slicer.vtkSegmentation()
        copy.DeepCopy(segmentationNode.GetSegmentation())
        self._protected.append((segmentationNode, copy))

    def __exit__(self, excType, exc, tb) -> bool:
        if excType is not None:
            self.rollBack()
        return False  # never swallow the error

    def rollBack(self) -> None:
        for nodeId in reversed(_nodeIds(self.scene)):
            if nodeId not in self._before:
                node = self.scene.GetNodeByID(nodeId)
                if node is not None:
                    self.scene.RemoveNode(node)
        for node, copy in reversed(self._protected):
            if node.GetScene() is self.scene:
                wasModifying = node.StartModify()
                try:
                    node.GetSegmentation().DeepCopy(copy)
                finally:
                    node.EndModify(wasModifying)
        self._protected = []
