"""The one exception type for mistakes a user can fix; the CLI turns it into one line, exit 2."""


class UserError(Exception):
    """A problem in the user's input (config, data, paths, mesh) with a message that says what to do."""
