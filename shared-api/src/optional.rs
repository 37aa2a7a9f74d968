//! Reading fields the way upstream KMM's Go types read them: an optional string written as `""`
//! is the Go zero value, so it means "unset". Upstream YAML and objects written by upstream
//! controllers carry such empty strings (`version: ""`, `imagePullPolicy: ""`); with these
//! deserializers they read back as `None` instead of being refused or treated as a value.

use serde::Deserialize;

use crate::module::ImagePullPolicy;

/// `Option<String>` where `""` reads as `None`.
pub fn empty_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// `Option<ImagePullPolicy>` where `""` reads as `None` (the API server's default applies).
pub fn pull_policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ImagePullPolicy>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => ImagePullPolicy::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(v)).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(default, deserialize_with = "empty_string")]
        s: Option<String>,
        #[serde(default, deserialize_with = "pull_policy")]
        p: Option<ImagePullPolicy>,
    }

    #[test]
    fn empty_strings_are_unset_and_values_stay() {
        let read = |j: &str| serde_json::from_str::<T>(j);
        assert_eq!(read(r#"{"s": "", "p": ""}"#).unwrap(), T { s: None, p: None });
        assert_eq!(read("{}").unwrap(), T { s: None, p: None });
        assert_eq!(
            read(r#"{"s": "v1", "p": "Never"}"#).unwrap(),
            T {
                s: Some("v1".into()),
                p: Some(ImagePullPolicy::Never)
            }
        );
        let err = read(r#"{"p": "Sometimes"}"#).unwrap_err().to_string();
        assert!(err.contains("Sometimes"), "{err}");
    }
}
