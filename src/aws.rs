//! The AWS side shared by S3 (object_store) and Glue (aws-sdk-glue): one configuration,
//! loaded from the standard chain (environment, shared profile, web identity/IRSA,
//! container and instance metadata), so both clients use the same credentials.

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use object_store::aws::AwsCredential;

/// How long one AWS API request (Glue, STS) may take; the SDK bounds only the TCP
/// connect by default, so an endpoint that accepts and never answers would hang.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one AWS API call may take with the SDK's own retries.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Loads the AWS configuration; `region` overrides the chain's region.
pub async fn sdk_config(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build(),
    );
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    loader.load().await
}

/// Hands the AWS SDK's credentials to object_store.
#[derive(Debug)]
pub struct ChainCredentials {
    provider: SharedCredentialsProvider,
}

impl ChainCredentials {
    /// Credentials from a loaded configuration, if it has a provider.
    pub fn from_config(config: &SdkConfig) -> Option<Arc<Self>> {
        config
            .credentials_provider()
            .map(|provider| Arc::new(Self { provider }))
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let c = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: format!(
                    "no AWS credentials: {e}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role"
                )
                .into(),
            })?;
        Ok(Arc::new(AwsCredential {
            key_id: c.access_key_id().to_string(),
            secret_key: c.secret_access_key().to_string(),
            token: c.session_token().map(str::to_string),
        }))
    }
}
