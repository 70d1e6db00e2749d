# Sourced by scripts/backup and scripts/restore: PostgreSQL URLs and messages.
# shellcheck shell=bash

die() { echo "error: $*" >&2; exit 1; }

# The libpq form of a database URL: the coordinator's SQLAlchemy form
# (postgresql+asyncpg://…, asyncpg's ?ssl=…) becomes postgresql://… with ?sslmode=…;
# anything that is not PostgreSQL is refused.
libpq_url() {
  local url=$1
  case $url in
    postgresql+asyncpg://* | postgresql+psycopg://* | postgresql+psycopg2://*)
      url=postgresql://${url#*://} ;;
    postgresql://* | postgres://*) ;;
    sqlite*) die "this is a SQLite URL; back up <TROOP_DATA_DIR>/coordinator.db with" \
      "'sqlite3 coordinator.db \".backup copy.db\"' instead (docs/state.md)" ;;
    "") die "no database URL given (set TROOP_DATABASE_URL or pass one)" ;;
    *) die "not a PostgreSQL URL: $(redact "$url")" ;;
  esac
  # asyncpg's ssl=MODE is libpq's sslmode=MODE.
  sed -E 's/([?&])ssl=/\1sslmode=/' <<<"$url"
}

# The URL with any password replaced by ***, for messages.
redact() { sed -E 's#(://[^:/@]+):[^@/]*@#\1:***@#' <<<"$1"; }

# The database name a URL points at (no query string).
database_name() { local path=${1%%\?*}; echo "${path##*/}"; }

# The coordinator's (SQLAlchemy) form of a libpq URL, for troop's own commands.
sqlalchemy_url() { echo "postgresql+asyncpg://${1#*://}"; }
