#!/bin/sh
# stop.sh STATE_DIR WAIT_S: stop the detached agent of STATE_DIR (stop_detached.sh)
# shellcheck source-path=SCRIPTDIR
. ./stop_detached.sh
stop_detached "$1" "$2"
