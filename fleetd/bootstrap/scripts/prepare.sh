#!/bin/sh
# prepare.sh PREFIX VERSION STATE_DIR: make the prefix (and the parents it lacks) and
# PREFIX/versions/VERSION.partial, empty. Prints created=DIR for each directory it made
# (outermost first), and own_state=1 if STATE_DIR is absent or empty (the install's own).
set -e
umask 022
p=$1; missing=""
while [ ! -d "$p" ]; do missing="$p $missing"; p=$(dirname "$p"); done
# word splitting wanted: the paths are checked (Target.check) to need no quoting
for d in $missing; do mkdir "$d"; echo "created=$d"; done
if [ ! -d "$1/versions" ]; then mkdir "$1/versions"; echo "created=$1/versions"; fi
rm -rf "$1/versions/$2.partial"
mkdir "$1/versions/$2.partial"
if [ ! -e "$3" ] || { [ -d "$3" ] && [ -z "$(ls -A "$3")" ]; }; then echo "own_state=1"; fi
