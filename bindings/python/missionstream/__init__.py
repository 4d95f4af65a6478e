"""missionstream: live mission plan streaming, one leader to many followers.

Python binding of ``libmissionstream`` (ctypes). Quick start (the Webdis
URL from ``$MISSIONSTREAM_URL``; the package's README has a complete one)::

    import os
    import missionstream

    url = os.environ["MISSIONSTREAM_URL"]
    with missionstream.Client(url) as lead_client, missionstream.Client(url) as follow_client:
        leader = lead_client.start("plan-1", "secret", "leader-code")
        follower = follow_client.connect("plan-1", "secret")   # the current state first
        leader.publish({"waypoints": [[48.1, 11.5]]})
        leader.flush()
        leader.stop()                                         # the follower gets ENDED
        for event in follower.events(timeout=5):
            print(event.kind.name, event.seq, event.data)

The shared library is found via ``$MISSIONSTREAM_LIB``, a copy inside this
package, or the cargo ``release`` / ``debug`` folders (of
``$CARGO_TARGET_DIR``, else ``target``) of the repository checkout.
"""

import os as _os
import sys as _sys

try:
    from ._ffi import library_path
except ImportError as _exc:
    # Run as a command (`python -m missionstream` imports this package with
    # argv[0] == "-m"; the console script is named missionstream): a setup
    # mistake gets one clear message, not a traceback.
    if _sys.argv and (_sys.argv[0] == "-m" or _os.path.basename(_sys.argv[0]) == "missionstream"):
        print(f"missionstream: error: {_exc}", file=_sys.stderr)
        raise SystemExit(1) from None
    raise
from . import client as _client
from . import errors as _errors
from .client import *  # noqa: F401,F403 - the names of client.__all__
from .errors import *  # noqa: F401,F403 - the names of errors.__all__

__version__ = "0.1.0"

#: The public names: each module lists its own once; the package adds the
#: path of the library it loaded.
__all__ = [*_client.__all__, *_errors.__all__, "library_path"]
