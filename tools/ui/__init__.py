"""memable ui: a local web page over a journal (SPEC-NEXT section 6).

Theory of operation. ``serve.main`` checks the path, makes a random token,
and serves ``app.make_app`` with Hypercorn's trio worker (Starlette runs on
trio through anyio). Every read goes through the public reader and
operations modules, in a worker thread, without a lock, so the page never
blocks or slows an engine: ``data.py`` keeps the instance listing of the
journal as it was at its last change (one replay per change, shared by
every request) and pages over it; an instance page reads that instance's
records and steps. The live view follows the journal as
``memable-dump --follow`` does (``follow_journal`` in a thread of its own)
and sends what changed as Server-Sent Events. Actions are POSTs that need
``Authorization: Bearer TOKEN`` and call ``memable_log.operations``, so
they are handed over exactly as the ``memable`` command hands them over.
``render.py`` builds the HTML, escaping every value taken from a journal.

Starlette and Hypercorn are the optional extra ``memable-log[ui]``; nothing
else in the library imports this package.
"""
