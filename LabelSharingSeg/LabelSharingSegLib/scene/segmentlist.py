"""The atlas segment checklist shown by the widget, without Qt: it follows a segmentation node's segments.

Adding, renaming, recolouring or removing a segment (e.g. in the Segment Editor) fires only
``vtkSegmentation.SegmentAdded``, ``SegmentModified`` and ``SegmentRemoved`` on the node, never ``ModifiedEvent``,
so those three are observed. Ticks are kept across refreshes; a segment that appears (just drawn) starts
ticked. The widget renders :attr:`SegmentChecklist.entries` and calls :meth:`setChecked` when the user ticks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import slicer

SEGMENT_EVENTS = ("SegmentAdded", "SegmentModified", "SegmentRemoved")


@dataclass(frozen=True)
class SegmentEntry:
    segmentId: str
    name: str
    color: tuple[float, float, float]
    checked: bool


class SegmentChecklist:
    """Segments of one segmentation node with a tick each. ``onChanged()`` runs after every change."""

    def __init__(self, onChanged: Callable[[], None] | None = None):
        self.onChanged = onChanged
        self.node = None
        self._observations: list[int] = []
        self._entries: list[SegmentEntry] = []

    # ------------------------------------------------------------------ node
    def setSegmentationNode(self, node) -> None:
        """Follow ``node`` (None: empty list). Ticks of the previous node are forgotten; all start ticked."""
        self._removeObservers()
        self.node = node
        self._entries = []
        if node is not None:
            for eventName in SEGMENT_EVENTS:
                event = getattr(slicer.vtkSegmentation, eventName)
                self._observations.append(node.AddObserver(event, self._onSegmentEvent))
        self.refresh()

    def close(self) -> None:
        self._removeObservers()
        self.node = None
        self._entries = []

    def _removeObservers(self) -> None:
        if self.node is not None:
            for tag in self._observations:
                self.node.RemoveObserver(tag)
        self._observations = []

    def _onSegmentEvent(self, caller, event) -> None:
        self.refresh()

    # ------------------------------------------------------------------ state
    def refresh(self) -> None:
        """Re-read the segments: names and colours updated, removed ones dropped, new ones ticked."""
        ticks = {entry.segmentId: entry.checked for entry in self._entries}
        entries = []
        if self.node is not None and self.node.GetSegmentation() is not None:
            segmentation = self.node.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                segmentId = segmentation.GetNthSegmentID(index)
                segment = segmentation.GetSegment(segmentId)
                color = tuple(float(c) for c in segment.GetColor())
                entries.append(SegmentEntry(segmentId, segment.GetName(), color, ticks.get(segmentId, True)))
        self._entries = entries
        self._changed()

    @property
    def entries(self) -> list[SegmentEntry]:
        return list(self._entries)

    def checkedIds(self) -> list[str]:
        return [entry.segmentId for entry in self._entries if entry.checked]

    def setChecked(self, segmentId: str, checked: bool) -> None:
        self._entries = [
            SegmentEntry(e.segmentId, e.name, e.color, bool(checked)) if e.segmentId == segmentId else e
            for e in self._entries
        ]
        self._changed()

    def setAllChecked(self, checked: bool) -> None:
        self._entries = [SegmentEntry(e.segmentId, e.name, e.color, bool(checked)) for e in self._entries]
        self._changed()

    def _changed(self) -> None:
        if self.onChanged is not None:
            self.onChanged()
