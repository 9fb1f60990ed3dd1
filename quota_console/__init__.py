"""The web console for budget owners (`quota console`): a client of the center's admin API, pages rendered
on the server.

    users      who may sign in, and the certificate each person calls the center with
    auth       the session cookie, sign-in, the CSRF token on every form that changes something
    reads      what each page reads from the center, as the signed-in person
    figures    what the pages show, computed from the answers (pure)
    pages      the reading pages; actions: the writes, each one the CLI also has
    app        settings, the Starlette application, serving it with uvicorn

It keeps no state: every page reads the center anew, and every write is the center's own call, authorized
and audited under the person who signed in.
"""
