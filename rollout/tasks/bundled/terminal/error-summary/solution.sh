awk '{ n[$2]++ } END { printf "{"; sep = ""; for (k in n) { printf "%s\"%s\": %d", sep, k, n[k]; sep = ", " } print "}" }' server.log > summary.json
