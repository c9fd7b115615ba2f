"""The logged-in user of a Streamlit session, the login form, and the checks every page and action makes.

Pages call ``require_page`` before drawing anything, so a page refuses a session that may not see
it even when reached directly (a bookmarked URL, a test running the page script alone). Actions
call ``act`` at the moment the button is pressed: it reloads the configuration from disk, so a
user removed or demoted since they logged in is refused in every browser tab they still have open.
"""

from __future__ import annotations

import logging

import streamlit as st

from dashboard import auth, data, ui
from qctrace.config import AuthConfig, load_config
from qctrace.errors import ConfigError

log = logging.getLogger(__name__)

USER_KEY = "user"
"""Session-state key: ``{"name": ..., "role": ...}`` once logged in (tests set it directly)."""


def current_user() -> auth.User | None:
    value = st.session_state.get(USER_KEY)
    if isinstance(value, dict) and value.get("name") and value.get("role"):
        return auth.User(str(value["name"]), str(value["role"]))
    return None


def fresh_auth() -> AuthConfig:
    """The users as the configuration file says *now* (never cached: permissions must not lag)."""
    return load_config(data.config_path()).dashboard.auth


def login_form() -> None:
    """Log in with a configured user name and password; says nothing about which of the two was wrong."""
    st.title("qctrace")
    try:
        users = fresh_auth()
    except ConfigError as exc:
        st.error(ui.md_escape(str(exc)))
        return
    if not users.users:
        st.error("No dashboard users are configured, so nobody can log in. Add a `[dashboard.auth.users.NAME]`"
                 " table with `role` and `password_hash` to the configuration (`qctrace users hash-password`"
                 " prints one), then reload this page.", icon=":material/lock:")
        return
    with st.form("login", enter_to_submit=True):
        st.subheader("Log in")
        name = st.text_input("User name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", type="primary")
    if submitted:
        user = auth.login(users, name.strip(), password)
        if user is None:
            log.info("dashboard.login refused user=%r", name[:64])  # never the password
            st.error("Unknown user name or wrong password.", icon=":material/lock:")
            return
        log.info("dashboard.login user=%s role=%s", user.name, user.role)
        st.session_state[USER_KEY] = {"name": user.name, "role": user.role}
        st.session_state.pop("login_password", None)
        st.rerun()


def logout() -> None:
    st.session_state.pop(USER_KEY, None)


def require_page(page: str) -> auth.User:
    """The session's user if their role may open ``page``; otherwise say so and stop the script."""
    user = current_user()
    if user is None:
        st.warning("Log in to see this page.", icon=":material/lock:")
        st.stop()
    if not auth.can_open(user, page):
        st.error(f"The {ui.md_escape(user.role)} role cannot open this page.", icon=":material/block:")
        st.stop()
    return user


def act(action: str) -> auth.User:
    """The user, re-checked against the configuration on disk, allowed to do ``action`` now.

    Raises ``auth.PermissionDenied`` (a logged-out session, a removed user, a role that may not).
    """
    return auth.authorize(fresh_auth(), current_user(), action)
