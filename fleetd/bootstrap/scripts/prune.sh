#!/bin/sh
# prune.sh PREFIX "KEEP...": remove the version directories not named in KEEP
cd "$1/versions" || exit 0
for d in *; do
  [ -e "$d" ] || continue
  case " $2 " in *" $d "*) continue ;; esac
  rm -rf "$d" && echo "pruned=$d"
done
