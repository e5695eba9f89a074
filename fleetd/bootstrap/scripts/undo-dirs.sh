#!/bin/sh
# undo-dirs.sh DIR...: remove the directories an install made, innermost first, if empty
for d in "$@"; do rmdir "$d" 2>/dev/null || true; done
