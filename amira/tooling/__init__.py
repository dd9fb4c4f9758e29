"""Tools around the server: model downloads and repository building, never imported when serving."""
