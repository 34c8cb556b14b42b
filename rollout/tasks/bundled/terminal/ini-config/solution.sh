sed -i 's/^port = 8000$/port = 8080/' config/app.ini
printf '\n[cache]\nenabled = true\nttl = 300\n' >> config/app.ini
