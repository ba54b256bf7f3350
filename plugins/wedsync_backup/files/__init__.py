"""The files component: the platform's photos and documents, backed up content-addressed and restored.

``state``: what a backup lists (path -> content hash, size); ``source``: the files bucket and the table that
describes it; ``content``: the shared, encrypted content store on every target; ``capture``: one backup's
capture (full or delta, with validation); ``restore``: writing objects back; ``prune``: removing content
no retained backup references.
"""
