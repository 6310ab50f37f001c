"""Few-shot image classification with CLIP: the pure building blocks.

``formats/`` (folder, csv, dassl) parse data sets into
:class:`~ftclip.tasks.fewshot.dataset.ClassificationData`; ``protocol`` draws the K-shot train and
val sets and the base-to-new class split; ``templates`` holds the prompt templates; ``heads``,
``linear_probe``, ``coop`` and ``wise`` are the methods' tensor maths; ``schedules`` and
``methods`` their reference learning-rate schedules and defaults; ``metrics`` scores predictions;
``synthetic`` writes a demo set. See docs/methods/fewshot.md.
"""
