"""Parts of the Kubernetes runtime (:mod:`bot.runtime.kubernetes`).

``config`` reads the ``RWBOT_K8S_*`` settings, ``manifests`` renders the workspace
objects from templates, ``api`` turns client errors into the bot's error tree,
``cluster`` makes the runtime's calls through it, ``credentials`` mints and
revokes the clone tokens, ``diagnose`` reads pod status as a person would,
``stream`` runs commands over the pod exec WebSocket, and ``checkout`` reads the
devfile of the commit a workspace will run before its pod exists.
"""
