#!/bin/sh
# Entrypoint of the loramux images: `loramux "$@"`, except that `serve` needs API keys.
#
# The images listen on 0.0.0.0, where a server without keys would let anyone who reaches the port
# act as admin. Mount a keys file (see README, Security) as a secret at
# /run/secrets/loramux-api-keys, or point LORAMUX_API_KEYS (or --api-keys) at one; an open server
# needs --insecure-no-auth (or LORAMUX_INSECURE_NO_AUTH=1) said out loud. `loramux serve` itself
# refuses a missing or malformed keys file with one line. Other commands (`registry serve` has
# its own --tokens) pass straight through.
set -eu

DEFAULT_KEYS=/run/secrets/loramux-api-keys

if [ "${1:-}" = "serve" ]; then
    if [ -z "${LORAMUX_API_KEYS:-}" ] && [ -f "$DEFAULT_KEYS" ]; then
        export LORAMUX_API_KEYS="$DEFAULT_KEYS"
    fi
    case " $* " in
        *" --api-keys "* | *" --api-keys="* | *" --insecure-no-auth "*) ;;
        *)
            if [ -z "${LORAMUX_API_KEYS:-}" ] && [ -z "${LORAMUX_INSECURE_NO_AUTH:-}" ]; then
                echo "error: no API keys: mount a keys file at $DEFAULT_KEYS, or set" \
                    "LORAMUX_API_KEYS to one (--insecure-no-auth serves it open to anyone)" >&2
                exit 2
            fi
            ;;
    esac
fi
exec loramux "$@"
